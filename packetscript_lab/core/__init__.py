"""Facts the rest of the package reads from one place (the bottom layer: imports nothing above).

- :mod:`packetscript_lab.core.flows`: the traffic language (flows between lab hosts), its parser,
  the default traffic and how flows become the lab's traffic calls.
- :mod:`packetscript_lab.core.protocols`: the protocol table (fields, offsets, widths, how a
  layer finds the next), read by the Lua engine, field names and summaries, and the checker.
- :mod:`packetscript_lab.core.netutil`: the Internet checksum, pseudo-headers, EtherTypes,
  Ethernet headers, MAC and address bytes.
- :mod:`packetscript_lab.core.pcap`: the link-type table and the one pcap/pcapng reader and
  writer (the LuaJIT replay driver gets the table through its configuration).
- :mod:`packetscript_lab.core.results`: verdict names and the named bits of a result code
  (handed to the Lua runner through its configuration).
- :mod:`packetscript_lab.core.netfilter`: the built-in tables and their chains.
- :mod:`packetscript_lab.core.fields`: which header fields a script changed, and one-line
  frame summaries, read from the protocol table.
"""
