"""Members' and creators' own choices: mutes, refusals of personalisation and training, opt-outs,
data deletion (``services``)."""
