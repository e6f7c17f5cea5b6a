"""Backends that run scripts on packets: replay (pcap files, no privileges)."""
