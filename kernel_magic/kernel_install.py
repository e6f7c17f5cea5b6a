"""The "PacketScript Lab" Jupyter kernel: this Python's ipykernel with the extension loaded
(through ``kernel_magic.preload``, so that a notebook's own ``%load_ext kernel_magic`` stays silent)."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from importlib import resources

KERNEL_NAME = "packetscript-lab"
DISPLAY_NAME = "PacketScript Lab"


def kernel_json(python: str | None = None, display_name: str = DISPLAY_NAME) -> dict:
    """kernel.json for ``python`` (default: the running interpreter)."""
    return {
        "argv": [python or sys.executable, "-m", "ipykernel_launcher",
                 "-f", "{connection_file}", "--ext", "kernel_magic.preload"],
        "display_name": display_name,
        "language": "python",
        "metadata": {"debugger": True},
    }


def install(*, user: bool = False, prefix: str | None = None, name: str = KERNEL_NAME,
            display_name: str = DISPLAY_NAME) -> str:
    """Install the kernel spec; returns the directory it was written to."""
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as tmp:
        spec_dir = os.path.join(tmp, name)
        os.mkdir(spec_dir)
        data = resources.files("kernel_magic") / "kernelspec"
        for entry in data.iterdir():
            if entry.name.endswith(".png"):
                with resources.as_file(entry) as path:
                    shutil.copy(path, os.path.join(spec_dir, entry.name))
        with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
            json.dump(kernel_json(display_name=display_name), f, indent=2)
        return KernelSpecManager().install_kernel_spec(spec_dir, name, user=user, prefix=prefix,
                                                       replace=True)


def uninstall(name: str = KERNEL_NAME) -> str:
    from jupyter_client.kernelspec import KernelSpecManager
    ksm = KernelSpecManager()
    path = ksm.get_kernel_spec(name).resource_dir
    ksm.remove_kernel_spec(name)
    return path
