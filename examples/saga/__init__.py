"""An order saga: reserve, charge, wait for a human approval with a timeout, ship or compensate."""
