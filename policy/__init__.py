"""Enforcement back-ends: RADIUS CoA/Disconnect, Diameter RAR/ASR, softswitch
hang-ups, SNMP and Linux traffic control. Policy decides *how* to act on a
given piece of equipment, never *whether*."""
