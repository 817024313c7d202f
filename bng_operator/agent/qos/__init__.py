"""The access data path's shaping: one HTB class per bound session, each way."""
