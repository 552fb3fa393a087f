-- The trace context of the DeleteUser that recorded the job: a redelivery
-- by the dispatcher starts a trace of its own, linked to that call's span.
ALTER TABLE purge_jobs ADD COLUMN traceparent TEXT;
