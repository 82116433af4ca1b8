# gunicorn settings for llm-gateway. One worker process, the API process, starts the runners; many threads serve
# the HTTP side, each open stream holding one. The worker is the gateway's own (gateway/http_worker.py):
# gunicorn's master, signals and hooks around an HTTP/1.1 loop cheaper than gthread's.
# `python -m gateway serve` loads this file, then sets bind, threads and loglevel from the gateway's settings.
workers = 1
worker_class = "gateway.http_worker.GatewayWorker"
threads = 64
preload_app = False          # load models in the worker, after the fork
timeout = 120                # the worker heartbeat; streams may run longer than this
graceful_timeout = 10        # `serve` sets it to shutdown_grace plus a margin (gateway/shutdown.py)
keepalive = 5                # seconds an idle kept-alive connection stays open
accesslog = None
errorlog = "-"
