"""Pier's tiny test guest (see build.py)."""
