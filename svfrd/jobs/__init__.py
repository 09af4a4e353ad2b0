"""The jobs table and everything that touches it: the model (`model`), the database opener and schema upgrades
(`database`, with the Alembic scripts in `migrations/`), and the store (`store`), the only module that reads or
writes job rows. Code outside this package calls the store's functions and builds no SQL of its own."""
