"""AWS: sessions and clients (`aws.py`, where botocore's errors become ours), the stacks and
instances the executor reads and writes, and what an electron needs found before it creates
anything (`lookups.py`: network, capacity, images, permissions)."""
