"""ketch: a lightweight virtual-machine manager on QEMU.

Layers, dependencies pointing down only::

    cli -> client -> (HTTP/JSON on a Unix socket) -> daemon -> service
        -> runtime, images, store, config -> host -> model, errors
"""

__version__ = "0.1.0"
