"""Long-running processes: the webhook receiver, the lost-run watcher, the inputs servers and the
local stack that starts them."""
