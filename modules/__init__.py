"""Built-in VisProg modules, installed as ``visprog.modules``.

One file per family. Each registers through the ``visprog.modules``
entry-point group, exactly as a third-party plugin does.
"""
