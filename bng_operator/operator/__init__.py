"""Operator: kopf handlers (thin) and pure rendering of policy objects into BNGNode specs."""
