-- Runs made by HandlerService.Test: logged like any run, with no stored event and no
-- delivery; statistics leave them out. A constant default on a (partitioned) table is
-- recorded in the catalogue, not written into every row.
ALTER TABLE execution_logs ADD COLUMN test BOOLEAN NOT NULL DEFAULT false;
