# MikroTik RouterOS: hand out splitdns (192.168.1.53) as the only DNS server on the LAN.
# The DHCP network entry sets option 6; clear any other dns-server there.
/ip dhcp-server network set [find address="192.168.1.0/24"] dns-server=192.168.1.53
# The router's own resolver is not handed out any more; keep it only for the router itself.
# If "use-peer-dns" on the WAN client fills /ip dns, that does not reach LAN clients.
# Check: /ip dhcp-server network print
