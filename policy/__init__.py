"""Enforcement: charging decides, `policy/` acts on the network and proves it did.

Policy decides *how* on a given piece of equipment, never *whether*: the
charging core's events (``ocs.balance`` writes them to the outbox in the
same transaction as the charge; ``ocs.charging.relay`` publishes them to the
cluster event stream) say what happened, the plan's `EnforcementPolicy` says
what the operator wants done about it, and the session's NAS record says
which equipment to talk to and how.

Flow (one direction)::

    event stream --consumer--> decide --queue (durable)--> worker --actuator--> NAS
     (group "policy")          (pure)   store | Redis         |  audit, metrics
                                                               +- retry / fall back /
                                                                  dead-letter

Modules, one job each:

=================  ====================================================================
`decide`           event + plan + session + state -> decision and actions (pure)
`consumer`         reads the event stream (consumer group), acks after queueing
`queue`            the queue contract; `store_queue` (table, embedded) and
                   `redis_queue` (Redis Streams, several nodes)
`state`            enforcement state per session (``policy_sessions``), in the store
`worker`           carries actions out: supersede, attempt, audit, retry, fall back
`radius_dae`       RFC 5176 CoA-Request / Disconnect-Request, RFC 5080 retransmission
`vendors`          CoA profiles: session identification (``conf/policy/coa.toml``)
                   and speed attributes (``radius.profiles``)
`diameter_rar`     Gy RAR / ASR through the Diameter front-end
`softswitch`       FreeSWITCH ESL, Asterisk AMI, Kamailio JSON-RPC hang-ups
`snmp`             SNMP v2c/v3 SETs from per-device templates
`tc`               Linux HTB + u32 shaping on this host (pyroute2)
`service`          wires the above; operator requests of the API (``ctx.policy``)
`component`        the daemon component
=================  ====================================================================

Which back-end serves a session: Diameter sessions by RAR/ASR; a NAS of kind
``softswitch`` (or vendor freeswitch/asterisk/kamailio) by the control
endpoints its record names; any other NAS by RADIUS CoA to its ``coa_port``.
A NAS record's ``control.enforce`` (a list: ``coa``, ``diameter``,
``freeswitch``, ``asterisk``, ``kamailio``, ``snmp``, ``tc``) overrides that,
e.g. ``["snmp"]`` for a switch without CoA, ``["coa", "tc"]`` to shape on this
host as well. Other ``control`` keys: ``coa_address`` (where CoA goes when the
NAS sends from elsewhere, or is registered by prefix), ``freeswitch``,
``asterisk``, ``kamailio``, ``snmp`` (see each module).

Guarantees (DESIGN invariant 6): an action that was decided is carried out or
retried until it is, or dead-lettered for an operator after
``[policy] max_attempts``; every attempt is in the audit log (actor
``policy``) with what was sent, what came back and how long it took.
Actions are idempotent per (session, action, generation, back-end); a newer
decision for a session supersedes older actions not yet carried out.
"""
