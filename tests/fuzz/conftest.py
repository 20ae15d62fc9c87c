"""
The fuzz suite's hypothesis profiles, registered early enough for C{--hypothesis-profile}.

Run longer: C{python3 -m pytest tests/fuzz --hypothesis-profile=long} or
C{SECMAIL_FUZZ_EXAMPLES=5000 python3 -m pytest tests/fuzz}. See tests/fuzz/support.py.
"""

from tests.fuzz.support import register_profiles

register_profiles()
