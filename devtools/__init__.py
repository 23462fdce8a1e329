"""Tools for running the product locally: the demo (``make run``) and the embedded Kafka-compatible broker.

They ship with the package for ``make run`` and the compose file, but the worker never imports them.
"""
