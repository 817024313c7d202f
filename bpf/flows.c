// The flow maps alone (lib/flow.h): the agent's flow reader loads this to open, or adopt,
// the flow log every program writes its flow events into, whichever programs run.
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>

#include "lib/flow.h"
