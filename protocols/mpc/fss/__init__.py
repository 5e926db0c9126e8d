"""Function secret sharing with a dealer: an AES PRG (`prg`), distributed comparison
functions (`dcf`), and the gates built on them."""
