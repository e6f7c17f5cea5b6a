"""The live lab: a private network of namespaces where scripts judge real traffic.

See docs/lab.md. ``Lab`` lives in the notebook process; everything privileged happens in
the lab process (``process.py``) it starts inside its own namespaces.
"""
from .handle import AttachedScript
from .client import Capture, Lab, connect
from .errors import LabError
from .topology import Host, Interface, describe

__all__ = ["Lab", "LabError", "AttachedScript", "Capture", "Host", "Interface", "connect", "describe"]
