# Declarations of the compiled RADIUS decoder (cext/radius_codec.pyx).
cdef bint known_code(int code) noexcept
cdef bint vsa_ok(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end) noexcept
