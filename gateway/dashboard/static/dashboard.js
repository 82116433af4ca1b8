// The live dashboard. Everything comes from one stream, GET /api/events (Server-Sent Events read with fetch, so
// the API key travels in a header, never in a URL). Rows are rendered from a bounded store at most a few times a
// second and reused by request id, so neither the DOM nor the work grows with the number of requests. All text
// from the server is set with textContent: nothing is parsed as HTML.
'use strict';

(() => {
  const body = document.body;
  const ROOT = body.dataset.root || '/';
  const AUTH = body.dataset.auth === 'on';
  const KEEPALIVE_MS = Number(body.dataset.keepalive || 10) * 1000;
  const KEY_STORE = 'llm-gateway.api-key';
  const MAX_ACTIVE_ROWS = 50;
  const MAX_RECENT_ROWS = 50;
  const MAX_RECORDS = 1000;           // records kept in memory; the oldest finished ones go first
  const CHART_SECONDS = 300;
  const RATE_SECONDS = 10;            // the "Tokens/s" figure: the average of the last full seconds
  const FINAL = new Set(['completed', 'cancelled', 'failed']);
  const $ = (id) => document.getElementById(id);

  const state = {
    records: new Map(),               // id → record, in arrival order
    models: [], modelsAt: Date.now(),
    samples: new Map(),               // epoch second → generated tokens
    clockOffset: 0,                   // server clock − browser clock, in ms
    dirty: true,
  };

  // -- the API key --------------------------------------------------------------------------------------------

  function apiHeaders() {
    const key = localStorage.getItem(KEY_STORE);
    return key ? { Authorization: 'Bearer ' + key } : {};
  }

  function askKey(message) {
    $('key-error').textContent = message || '';
    $('key-form').hidden = false;
    $('key-input').focus();
    setConnection('offline', 'API key needed');
  }

  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const key = $('key-input').value.trim();
    if (!key) return;
    localStorage.setItem(KEY_STORE, key);
    $('key-input').value = '';
    $('key-form').hidden = true;
    connect();
  });

  if (AUTH) $('change-key').addEventListener('click', () => askKey(''));

  // -- the event stream ---------------------------------------------------------------------------------------

  let connection = null;              // the AbortController of the open stream
  let retryTimer = null;

  function setConnection(stateName, text) {
    const el = $('connection');
    el.dataset.state = stateName;
    el.textContent = text;
  }

  function retryLater() {
    setConnection('offline', 'reconnecting');
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, 2000);
  }

  async function connect() {
    if (connection) connection.abort();
    const controller = new AbortController();
    connection = controller;
    let response;
    try {
      response = await fetch(ROOT + 'api/events', { headers: apiHeaders(), cache: 'no-store',
        signal: controller.signal });
    } catch (err) {
      if (connection === controller) retryLater();
      return;
    }
    if (response.status === 401) {
      askKey(localStorage.getItem(KEY_STORE) ? 'The server refused that key.' : '');
      return;
    }
    if (!response.ok || !response.body) {
      retryLater();
      return;
    }
    setConnection('live', 'live');
    await readEvents(response.body.getReader(), controller);
    if (connection === controller) retryLater();
  }

  async function readEvents(reader, controller) {
    const decoder = new TextDecoder();
    let buffer = '';
    let watchdog = null;
    const arm = () => {             // a silent stream (no data, no keep-alive) is a dead one
      clearTimeout(watchdog);
      watchdog = setTimeout(() => controller.abort(), KEEPALIVE_MS * 3);
    };
    arm();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        arm();
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
        let cut;
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          dispatch(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
        }
      }
    } catch (err) {
      // aborted or the network went away: the caller reconnects
    } finally {
      clearTimeout(watchdog);
    }
  }

  function dispatch(block) {
    let name = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith('event:')) name = line.slice(6).trim();
      else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
    }
    if (!data.length || !HANDLERS[name]) return;
    try {
      HANDLERS[name](JSON.parse(data.join('\n')));
    } catch (err) {
      console.error('dashboard: bad event', name, err);
    }
    state.dirty = true;
  }

  const HANDLERS = {
    snapshot(data) {
      setClock(data);
      state.records.clear();
      byArrival(data.requests).forEach(upsert);   // oldest first: the store drops the first-inserted finished ones
      state.samples.clear();
      addSamples(data.throughput);
      setModels(data.models);
    },
    request(record) { upsert(record); },
    progress(data) { data.requests.forEach(upsert); },
    models(data) { setModels(data.models); },
    tick(data) {
      setClock(data);
      addSamples(data.throughput);
    },
    error(data) { setConnection('offline', 'error: ' + data.error); },
  };

  const byArrival = (records) => records.slice().sort((a, b) => a.queued_at.localeCompare(b.queued_at));

  function upsert(record) {
    const old = state.records.get(record.id);
    if (old && FINAL.has(old.status) && !FINAL.has(record.status)) return;   // a late update of a done one
    state.records.set(record.id, record);
    if (state.records.size > MAX_RECORDS) {
      for (const [id, r] of state.records) {
        if (state.records.size <= MAX_RECORDS) break;
        if (FINAL.has(r.status)) state.records.delete(id);
      }
    }
  }

  function setModels(models) {
    state.models = models;
    state.modelsAt = Date.now();
  }

  function setClock(data) {
    state.clockOffset = data.time * 1000 - Date.now();
  }

  function addSamples(buckets) {
    for (const [second, count] of buckets) state.samples.set(second, count);
    const oldest = serverSecond() - CHART_SECONDS;
    for (const second of state.samples.keys()) if (second < oldest) state.samples.delete(second);
  }

  // -- actions ------------------------------------------------------------------------------------------------

  async function post(path, button) {
    button.disabled = true;
    try {
      const response = await fetch(ROOT + path, { method: 'POST', headers: apiHeaders() });
      if (response.status === 401) askKey('The server refused that key.');
      else if (!response.ok) button.title = (await response.json().catch(() => ({}))).error || response.statusText;
    } catch (err) {
      button.disabled = false;
    }
  }

  document.addEventListener('click', (event) => {
    const button = event.target.closest('button[data-action]');
    if (!button) return;
    if (button.dataset.action === 'cancel') {
      button.textContent = 'Cancelling';
      post('api/requests/' + encodeURIComponent(button.dataset.target) + '/cancel', button);
    } else if (button.dataset.action === 'unload') {
      button.textContent = 'Unloading';
      post('api/models/' + encodeURIComponent(button.dataset.target) + '/unload', button);
    }
  });

  // -- rendering ----------------------------------------------------------------------------------------------

  const serverNow = () => Date.now() + state.clockOffset;
  const serverSecond = () => Math.floor(serverNow() / 1000);
  const parseTime = (text) => (text ? Date.parse(text) : null);

  function seconds(ms) {
    if (ms === null || !isFinite(ms)) return '';
    const s = Math.max(0, ms / 1000);
    if (s < 10) return s.toFixed(2) + ' s';
    if (s < 120) return s.toFixed(1) + ' s';
    return Math.floor(s / 60) + ' min ' + Math.floor(s % 60) + ' s';
  }

  function bytes(n) {
    if (!n) return '';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return n.toFixed(i ? 1 : 0) + ' ' + units[i];
  }

  const shortId = (id) => (id.length > 12 ? id.slice(0, 12) + '…' : id);
  const number = (n) => (n === null || n === undefined ? '' : String(n));

  // Keeps a tbody's rows equal to `items` (in order), reusing the row of each key; `fill(row, item)` sets the
  // cells, `make()` builds an empty row.
  function syncRows(tbody, items, keyOf, make, fill) {
    const existing = new Map();
    for (const row of tbody.rows) existing.set(row.dataset.id, row);
    let previous = null;
    for (const item of items) {
      const key = keyOf(item);
      let row = existing.get(key);
      if (row) existing.delete(key);
      else { row = make(); row.dataset.id = key; }
      fill(row, item);
      const wanted = previous ? previous.nextSibling : tbody.firstChild;
      if (row !== wanted) tbody.insertBefore(row, wanted);
      previous = row;
    }
    for (const row of existing.values()) row.remove();
  }

  function makeRow(classes) {
    const row = document.createElement('tr');
    for (const cls of classes) {
      const cell = row.insertCell();
      cell.className = cls;
    }
    return row;
  }

  function setText(row, cls, text) {
    const cell = row.querySelector('td.' + cls);
    if (cell.textContent !== text) cell.textContent = text;
    return cell;
  }

  function setButton(cell, action, target, label) {
    let button = cell.firstChild;
    if (!button) {
      button = document.createElement('button');
      button.type = 'button';
      button.dataset.action = action;
      button.textContent = label;
      cell.appendChild(button);
    }
    button.dataset.target = target;
  }

  function setBar(cell, done, total, label, prompt) {
    let bar = cell.firstChild;
    if (!bar) {
      bar = document.createElement('div');
      bar.className = 'bar';
      bar.innerHTML = '<div class="fill"></div><span class="label"></span>';   // fixed markup, no data
      cell.appendChild(bar);
    }
    const pct = total ? Math.min(100, (100 * done) / total) : 0;
    const fill = bar.firstChild;
    fill.style.width = pct.toFixed(1) + '%';
    fill.classList.toggle('prompt', prompt);
    bar.lastChild.textContent = label;
  }

  const MODEL_CELLS = ['name', 'memory', 'context', 'sequences', 'kv', 'waiting', 'keepalive', 'load', 'runner',
    'cache', 'actions'];

  // The persistent prompt cache (prefixes on disk, their size, restores against long prompts that found nothing,
  // warms), and in the title what each agent-noise rule did: prompts it changed, and the characters of system
  // prompt after its match that it kept cacheable.
  function cacheText(m) {
    const c = m.prompt_cache;
    const parts = [];
    if (c) {
      const tries = c.hits + c.misses;
      parts.push(c.entries + (c.entries === 1 ? ' prefix' : ' prefixes') + (c.bytes ? ', ' + bytes(c.bytes) : ''));
      if (tries) parts.push('hits ' + c.hits + ' / ' + tries + ' (' + Math.round((100 * c.hits) / tries) + '%)');
      if (c.restored_tokens) parts.push(number(c.restored_tokens) + ' tokens restored');
      if (c.warms) parts.push(c.warms + (c.warms === 1 ? ' warm' : ' warms'));
    } else {
      parts.push('off');
    }
    const p = m.parked;  // idle sequences' states parked in memory, out of the KV cache
    if (p && p.parked) parts.push(p.entries + ' parked' + (p.bytes ? ', ' + bytes(p.bytes) : '')
      + (p.restored ? ', ' + p.restored + ' restored' : ''));
    return parts.join(' · ');
  }

  function rulesText(m) {
    return Object.entries(m.prompt_rules || {}).map(([name, c]) => name + ': ' + c.applied + ' prompts, '
      + number(c.saved_chars) + ' chars kept cacheable').join('\n');
  }

  // The engine's process and its history: a crash names its signal, a restart is counted, and a runner that
  // came back without weight repacking says why (the note).
  // An upstream model's URLs instead: each with its circuit (closed is healthy), requests in flight, a share
  // lowered after 429/503, and its last error.
  const CIRCUITS = {closed: 'ok', open: 'circuit open', half_open: 'circuit half-open'};

  function endpointsText(endpoints) {
    return endpoints.map((e) => e.url + ' ' + (CIRCUITS[e.state] || e.state) + ', ' + e.in_flight + ' in flight'
      + (e.throttled ? ', busy' : '') + (e.state !== 'closed' && e.last_error ? ' (' + e.last_error + ')' : ''))
      .join(' · ');
  }

  function runnerText(m) {
    if (m.endpoints && m.endpoints.length) return endpointsText(m.endpoints);
    const parts = [(m.health === 'ok' ? 'pid ' + m.pid : m.health)];
    if (m.restarts) parts.push(m.restarts + (m.restarts === 1 ? ' restart' : ' restarts'));
    if (m.crashes) {
      parts.push(m.crashes + (m.crashes === 1 ? ' crash' : ' crashes')
        + (m.last_crash ? ', last ' + m.last_crash.reason + ' at ' + new Date(m.last_crash.at * 1000)
          .toLocaleTimeString() : ''));
    }
    if (m.repack === false) parts.push('no repacking');
    return parts.join(' · ');
  }

  function renderModels() {
    const sinceMs = Date.now() - state.modelsAt;
    syncRows($('models').tBodies[0], state.models, (m) => m.name, () => makeRow(MODEL_CELLS), (row, m) => {
      setText(row, 'name', m.name);
      setText(row, 'memory', bytes(m.size));
      setText(row, 'context', number(m.n_ctx));
      row.querySelector('td.context').title = m.context_reason || '';
      setText(row, 'sequences', m.parallel ? m.busy + ' / ' + m.parallel : m.busy + ' in flight');
      setBar(row.querySelector('td.kv'), m.kv_used, m.n_ctx, m.kv_used + ' / ' + m.n_ctx, false);
      setText(row, 'waiting', number(m.waiting));
      const left = m.keep_alive_left;
      setText(row, 'keepalive', left === null || left === undefined ? 'forever'
        : m.busy ? 'in use' : seconds(left * 1000 - sinceMs));
      setText(row, 'load', m.load_seconds ? seconds(m.load_seconds * 1000) : '');
      setText(row, 'runner', runnerText(m));
      setText(row, 'cache', cacheText(m)).title = rulesText(m);
      row.querySelector('td.runner').title = m.note || '';
      row.classList.toggle('crashed', m.health !== 'ok' || !!m.crashes);
      setButton(row.querySelector('td.actions'), 'unload', m.name, 'Unload');
    });
    $('models-empty').hidden = state.models.length > 0;
    $('stat-models').textContent = String(state.models.length);
  }

  const ACTIVE_CELLS = ['id', 'api', 'model', 'phase', 'progress wide', 'tokens', 'rate', 'elapsed', 'actions'];

  function progressOf(r) {
    if (r.phase === 'queued') {
      return [0, 1, r.queue_position ? 'queued, #' + r.queue_position : 'queued', false];
    }
    if (r.phase === 'loading') return [0, 1, 'loading the model', false];
    if (r.phase === 'prompt') {
      return [r.prompt_tokens_done, r.prompt_tokens, 'prompt ' + r.prompt_tokens_done + ' / ' + r.prompt_tokens
        + (r.cached_tokens ? ' (' + r.cached_tokens + ' cached)' : ''), true];
    }
    const max = r.max_tokens ? ' / ' + r.max_tokens : '';
    return [r.tokens_generated, r.max_tokens || 0, r.tokens_generated + max, false];
  }

  function renderActive(active) {
    const shown = active.slice(0, MAX_ACTIVE_ROWS);
    const now = serverNow();
    syncRows($('active').tBodies[0], shown, (r) => r.id, () => makeRow(ACTIVE_CELLS), (row, r) => {
      setText(row, 'id', shortId(r.id)).title = r.id;
      setText(row, 'api', r.api);
      setText(row, 'model', r.model);
      setText(row, 'phase', r.phase);
      const [done, total, label, prompt] = progressOf(r);
      setBar(row.querySelector('td.progress'), done, total, label, prompt);
      setText(row, 'tokens', String(r.tokens_generated));
      setText(row, 'rate', number(r.tokens_per_second));
      setText(row, 'elapsed', seconds(now - parseTime(r.queued_at)));
      setButton(row.querySelector('td.actions'), 'cancel', r.id, 'Cancel');
    });
    $('active-empty').hidden = active.length > 0;
    $('active-count').textContent = active.length ? '(' + active.length + ')' : '';
    const more = $('active-more');
    more.hidden = active.length <= MAX_ACTIVE_ROWS;
    more.textContent = '… and ' + (active.length - MAX_ACTIVE_ROWS) + ' more';
  }

  const RECENT_CELLS = ['finished', 'id', 'api', 'endpoint', 'model', 'status', 'reason', 'tokens', 'ttft', 'rate',
    'error wide'];

  function renderRecent(finished) {
    const shown = finished.slice(0, MAX_RECENT_ROWS);
    syncRows($('recent').tBodies[0], shown, (r) => r.id, () => makeRow(RECENT_CELLS), (row, r) => {
      const end = parseTime(r.finished_at);
      setText(row, 'finished', end ? new Date(end).toLocaleTimeString() : '');
      setText(row, 'id', shortId(r.id)).title = r.id;
      setText(row, 'api', r.api);
      setText(row, 'endpoint', r.endpoint);
      setText(row, 'model', r.model);
      setText(row, 'status', r.status).className = 'status status-' + r.status;
      setText(row, 'reason', r.finish_reason || '');
      setText(row, 'tokens', String(r.tokens_generated));
      const first = parseTime(r.first_token_at);
      setText(row, 'ttft', first ? seconds(first - parseTime(r.queued_at)) : '');
      setText(row, 'rate', number(r.tokens_per_second));
      setText(row, 'error', r.error || '').title = r.error || '';
    });
    $('recent-empty').hidden = finished.length > 0;
    $('recent-count').textContent = finished.length ? '(latest ' + shown.length + ')' : '';
  }

  function renderStats(active) {
    const running = active.filter((r) => r.status === 'running').length;
    $('stat-running').textContent = String(running);
    $('stat-queued').textContent = String(active.length - running);
    const last = serverSecond() - 1;
    let sum = 0;
    for (let s = last - RATE_SECONDS + 1; s <= last; s++) sum += state.samples.get(s) || 0;
    $('stat-rate').textContent = (sum / RATE_SECONDS).toFixed(1);
  }

  function renderChart() {
    const canvas = $('chart');
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const now = serverSecond();
    let peak = 1;
    for (const count of state.samples.values()) peak = Math.max(peak, count);
    const top = niceCeiling(peak);
    const left = 40, bottom = height - 16, plotWidth = width - left - 8, plotHeight = bottom - 8;
    ctx.strokeStyle = '#e2e5eb';
    ctx.fillStyle = '#6b7385';
    ctx.font = '11px system-ui, sans-serif';
    ctx.textAlign = 'right';
    for (const f of [0, 0.5, 1]) {
      const y = bottom - f * plotHeight;
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + plotWidth, y); ctx.stroke();
      ctx.fillText(String(Math.round(top * f)), left - 4, y + 4);
    }
    ctx.textAlign = 'center';
    for (let m = 0; m <= CHART_SECONDS / 60; m++) {
      ctx.fillText(m ? '-' + m + ' min' : 'now', left + plotWidth - (m * 60 * plotWidth) / CHART_SECONDS,
        height - 2);
    }
    const barWidth = plotWidth / CHART_SECONDS;
    ctx.fillStyle = '#2f6fdf';
    for (const [second, count] of state.samples) {
      const age = now - second;
      if (age < 0 || age >= CHART_SECONDS) continue;
      const h = (count / top) * plotHeight;
      ctx.fillRect(left + plotWidth - (age + 1) * barWidth, bottom - h, Math.max(barWidth - 0.5, 1), h);
    }
  }

  function niceCeiling(n) {
    const power = Math.pow(10, Math.floor(Math.log10(n)));
    for (const step of [1, 2, 5, 10]) if (n <= step * power) return step * power;
    return 10 * power;
  }

  function render() {
    const active = [];
    const finished = [];
    for (const r of state.records.values()) (FINAL.has(r.status) ? finished : active).push(r);
    finished.sort((a, b) => (b.finished_at || '').localeCompare(a.finished_at || ''));
    renderModels();
    renderActive(byArrival(active));
    renderRecent(finished);
    renderStats(active);
    renderChart();
    state.dirty = false;
  }

  // Data changes are drawn at most four times a second; clocks (elapsed, keep-alive, the chart) once a second.
  setInterval(() => { if (state.dirty) render(); }, 250);
  setInterval(render, 1000);
  window.addEventListener('resize', renderChart);

  render();
  connect();
})();
