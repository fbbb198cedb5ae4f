"""What electrons cost: prices and their sources, the meter, the local record, budgets."""
