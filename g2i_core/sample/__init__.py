"""Sample MMAG dumps (three real raw formats) and the loopback image server."""
