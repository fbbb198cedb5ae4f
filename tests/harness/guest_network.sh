#!/usr/bin/env bash
# The test guests' network, on this machine only. `up`: a bridge holding this machine's
# address in the guests' /24, forwarding off, and nftables tables that drop everything a guest
# sends anywhere but that address (nothing routed, no guest reaches another). `attach`: a
# network namespace for one guest, its veth on the bridge, the guest's address already set
# (as a DHCP lease would). `down` removes the bridge, its tables and every namespace of it.
# usage: guest_network.sh up BRIDGE ADDRESS/PREFIX | attach BRIDGE GUEST_ADDRESS/PREFIX
#        | detach BRIDGE GUEST_ADDRESS | down BRIDGE
set -euo pipefail
action=$1 bridge=$2 table=ec2_executor_$2
netns() { echo "$bridge-${1##*.}"; }   # BRIDGE-<last octet>
port() { echo "${bridge}p${1##*.}"; }  # host side of the guest's veth
case $action in
up)
  address=${3%/*}
  ip link add "$bridge" type bridge
  sysctl -qw "net.ipv4.conf.$bridge.forwarding=0" "net.ipv6.conf.$bridge.disable_ipv6=1"
  nft -f - <<NFT
table inet $table {
  chain input {
    type filter hook input priority filter - 1; policy accept;
    iifname "$bridge" ip daddr != $address drop
    iifname "$bridge" meta nfproto ipv6 drop
  }
  chain forward {
    type filter hook forward priority filter - 1; policy accept;
    iifname "$bridge" drop
    oifname "$bridge" drop
  }
}
table bridge $table {
  chain forward {
    type filter hook forward priority filter - 1; policy accept;
    iifname "${bridge}p*" drop
  }
}
NFT
  ip address add "$3" dev "$bridge"
  ip link set "$bridge" up
  ;;
attach)
  ns=$(netns "${3%/*}") host=$(port "${3%/*}")
  ip netns add "$ns"
  ip link add "$host" type veth peer name eth0 netns "$ns"
  sysctl -qw "net.ipv6.conf.$host.disable_ipv6=1"
  ip link set "$host" master "$bridge" up
  ip -n "$ns" link set lo up
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1
  ip -n "$ns" address add "$3" dev eth0
  ip -n "$ns" link set eth0 up
  echo "/run/netns/$ns"
  ;;
detach)
  ip link delete "$(port "$3")" 2>/dev/null || true
  ip netns delete "$(netns "$3")" 2>/dev/null || true
  ;;
down)
  for ns in /run/netns/"$bridge"-*; do [ ! -e "$ns" ] || ip netns delete "${ns##*/}" || true; done
  nft delete table inet "$table" 2>/dev/null || true
  nft delete table bridge "$table" 2>/dev/null || true
  ip link delete "$bridge" 2>/dev/null || true
  ;;
*) echo "usage: $0 up|attach|detach|down BRIDGE [ADDRESS]" >&2; exit 2 ;;
esac
