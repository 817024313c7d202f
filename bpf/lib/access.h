// What the DHCP fast path (access_ingress.c) hands on to the access data path
// (access_qos.c) at access ingress: frames that are not DHCP go to the program in slot
// ACCESS_NEXT_ARP of this array (a tail call) when it holds one, else to the stack.
//
// Pinned above the program generations (<bpf-dir>/access_next), so either side can be
// reloaded alone: the access data path puts its program there when it attaches.
#pragma once

#define ACCESS_NEXT_ARP 0
BPF_TABLE("prog", int, int, access_next, 1);
