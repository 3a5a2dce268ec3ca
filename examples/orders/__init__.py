"""The order flow of DESIGN §1: charge, reserve, record, emit — durably, exactly once."""
