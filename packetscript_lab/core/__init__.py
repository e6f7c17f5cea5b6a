"""Facts the rest of the package reads from one place (the bottom layer: imports nothing above).

- :mod:`packetscript_lab.core.flows`: the traffic language (flows between lab hosts), its parser,
  the default traffic and how flows become the lab's traffic calls.
"""
