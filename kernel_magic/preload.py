"""The extension as the "PacketScript Lab" kernel loads it at start-up (``--ext kernel_magic.preload``).

Loaded under this second name, the extension leaves a notebook's own ``%load_ext kernel_magic``
silent in that kernel (IPython prints "already loaded" when one name is loaded twice, while
:func:`kernel_magic.load_ipython_extension` ignores a second load into the same shell). So every
notebook starts with ``%load_ext kernel_magic`` and runs in any kernel that has the package.
"""
from kernel_magic import load_ipython_extension, unload_ipython_extension

__all__ = ["load_ipython_extension", "unload_ipython_extension"]
