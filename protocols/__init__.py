"""Pure card protocol code for the third-generation social security card: bytes in, typed records out."""
