"""The contracts between the agents: the Avro schemas of the topics (``schemas/``, shipped inside
the package so an installed wheel finds them) and their codec (:mod:`pipeline.contracts.avro`)."""
