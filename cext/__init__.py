"""Cython hot paths. Each module here has a pure-Python twin in `ocs/`;
`ocs.accel` selects the compiled one unless OCS_NO_EXTENSIONS=1."""
