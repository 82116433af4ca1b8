# gunicorn settings for llm-gateway. One worker process owns the models (llama.cpp contexts cannot be shared
# across processes); many threads serve the HTTP side, each open stream holding one.
# `python -m gateway serve` loads this file, then sets bind, threads and loglevel from the gateway's settings.
workers = 1
worker_class = "gthread"
threads = 64
preload_app = False          # load models in the worker, after the fork
timeout = 120                # the worker heartbeat; streams may run longer than this
graceful_timeout = 10        # `serve` sets it to shutdown_grace plus a margin (gateway/shutdown.py)
keepalive = 5
accesslog = None
errorlog = "-"
