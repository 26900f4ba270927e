"""Coming over from another DNS server: its per-name overrides read (sources.py), turned into
splitdns rules by the public answers (translate.py), and written as a zone mapping (render.py)."""
