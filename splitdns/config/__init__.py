"""The zone mapping: YAML with line numbers (tree), the frozen Config (model), upstream and NAT
sections, the embedded default. Imports only splitdns.wire and itself: every layer reads it."""
