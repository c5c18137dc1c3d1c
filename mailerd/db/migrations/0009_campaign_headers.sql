-- What a campaign sets on every email besides From: a Reply-To, extra header lines (validated
-- at creation: a header name token, one-line values, never a header mailerd itself writes), and
-- a template stored at the provider (SendGrid dynamic templates, Postmark templates).
ALTER TABLE campaigns
    ADD COLUMN reply_to          text,
    ADD COLUMN headers           jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN provider_template text;
