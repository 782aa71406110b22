"""ocsd: an online charging server for ISPs and VoIP operators.

The package is laid out along the data flow (see DESIGN.md): protocol layers in
`radius/` and `diameter/` turn packets into protocol-neutral requests for the
charging core here in `ocs/`, which rates, reserves and debits through
`ocs.store`; `policy/` acts on the network when the core says so.
"""

__version__ = "0.1.0"
