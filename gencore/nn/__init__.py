"""gencore.nn: modules built on gencore.ops."""
