-- A request's ledger entries in order, without a scan of the whole ledger.
CREATE INDEX IF NOT EXISTS ledger_by_request ON ledger (request, seq);
