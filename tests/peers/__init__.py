"""Real peers for the test suite (coturn, Kamailio, MariaDB, Chromium): see plugin.py for the fixtures."""
