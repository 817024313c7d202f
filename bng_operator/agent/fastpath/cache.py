"""The fast path's maps kept as a cache of the slow path's bound leases.

The slow path owns every decision; this writes its results into the maps: an entry after a
committed ACK, removal when a lease ends, subnet options and invalidation on reconfiguration,
and a full warm from the lease store at start. A map error costs the fast path an entry, never
the slow path a reply: it is logged and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from bng_operator.agent.config import NodeConfig
from bng_operator.agent.dhcp.leases import Lease
from bng_operator.agent.fastpath.entries import entry_for, subnet_options

if TYPE_CHECKING:  # the dataplane imports bcc
    from bng_operator.agent.dataplane.fastpath import FastPath

log = logging.getLogger("bng.fastpath")

Key = tuple[bool, int, bytes]


class SubscriberCache:
    def __init__(self, fp: FastPath, config: NodeConfig,
                 on_error: Callable[[str], None] = lambda op: None) -> None:
        self.fp = fp
        self.config = config
        self.on_error = on_error
        self.keys: dict[int, Key] = {}  # lease address -> its entry's key
        self.subnets: set[int] = set()
        self.unservable: set[str] = set()  # pools whose options the fast path cannot carry
        # Entries whose delete failed, by key (the identity, for the log): each would go on
        # answering for a lease that ended, so they are tried again until they are gone.
        self.undeleted: dict[Key, str] = {}

    # --- start-up ------------------------------------------------------------------------------

    def warm(self, leases: Iterable[Lease]) -> int:
        """Make the maps hold exactly the bound leases. Returns the number of entries."""
        self._write_subnets()
        entries = {}
        for lease in leases:
            e = entry_for(lease, self.config)
            if e is not None:
                entries[lease.address] = e
        wanted = {e.key for e in entries.values()}
        existing = self.fp.keys() if self.fp.adopted_maps else set()
        for key in existing - wanted:
            self.fp.delete(key)
        self.fp.put_many(list(entries.values()))
        self.keys = {a: e.key for a, e in entries.items()}
        return len(entries)

    def _write_subnets(self) -> None:
        wanted: set[int] = set()
        for pool in self.config.pools.values():
            for sc in pool.subnets:
                so = subnet_options(sc)
                if so is None:
                    if pool.name not in self.unservable:
                        log.warning("pool %s: its options do not fit the fast path's reply "
                                    "(at most 4 DNS servers and a 32-byte domain); its "
                                    "subscribers are answered by the slow path", pool.name)
                    self.unservable.add(pool.name)
                    continue
                self.fp.put_subnet(so)
                wanted.add(so.network)
        for network in (self.fp.subnet_keys() if self.fp.adopted_maps else self.subnets) - wanted:
            self.fp.delete_subnet(network)
        self.subnets = wanted

    # --- the packet path's results -----------------------------------------------------------------

    def bound(self, lease: Lease) -> None:
        """A committed ACK: the fast path answers this client's next request."""
        e = entry_for(lease, self.config)
        old = self.keys.get(lease.address)
        if old is not None and (e is None or old != e.key):
            del self.keys[lease.address]
            self._delete(old, lease)
        if e is None:
            return
        try:
            self.fp.put(e)
        except Exception as err:
            self._failed("put", lease, err)
            return
        self.keys[lease.address] = e.key
        self.undeleted.pop(e.key, None)  # its own again: a retry must not delete it

    def unbound(self, lease: Lease) -> None:
        """Released, declined, expired or moved: the slow path answers from now on."""
        key = self.keys.pop(lease.address, None)
        if key is not None:
            self._delete(key, lease)

    def _delete(self, key: Key, lease: Lease) -> None:
        try:
            self.fp.delete(key)
        except Exception as err:
            self.undeleted[key] = lease.identity
            self._failed("delete", lease, err)

    def retry_deletes(self) -> int:
        """Try the failed deletes again. Returns how many entries are still left over."""
        for key, identity in list(self.undeleted.items()):
            try:
                self.fp.delete(key)
            except Exception as err:
                log.warning("fast path: the entry of %s is still not removed: %s", identity, err)
                continue
            del self.undeleted[key]
            log.info("fast path: the left-over entry of %s is removed", identity)
        return len(self.undeleted)

    def _failed(self, op: str, lease: Lease, err: Exception) -> None:
        self.on_error(op)
        log.error("fast path: %s of the entry of %s failed: %s; %s", op, lease.identity, err,
                  "retried until it is gone" if op == "delete" else "the slow path answers it")

    # --- configuration -------------------------------------------------------------------------

    def reconfigure(self, config: NodeConfig, leases: Iterable[Lease]) -> int:
        """New options reach the subnet map at once; an entry the fast path can no longer
        answer for is dropped. (Sessions whose policy changed are dropped on their
        ``changed(policy)`` event.) Returns how many were dropped."""
        self.config = config
        self._write_subnets()
        dropped = 0
        for lease in leases:
            if lease.address in self.keys and entry_for(lease, config) is None:
                self.unbound(lease)
                dropped += 1
        return dropped

    def counts(self) -> dict[str, int]:
        circuits = sum(1 for k in self.keys.values() if k[0])
        return {"subscribers": len(self.keys) - circuits, "circuits": circuits,
                "subnet_options": len(self.subnets)}
