"""PII entity names and the column-name defaults that apply when no catalog entry does.

An *entity* says what kind of personal data a column holds (``email``, ``phone`` ...).
It tags every token (``tok_email_…``) so that an agent can still tell an e-mail from a
phone number, and so that a token sent back can only be resolved as what it was.

Name defaults exist because a catalog written by hand is always behind the schema: a
column called ``email`` in a table nobody listed is PII all the same. They match the
column name only (case-insensitive globs), first match wins, most specific first, and
the catalog can switch any column off (``entity: none``). Bare ``name`` is deliberately
not a default: ``products.name`` and ``pg_settings.name`` would drown the real hits.
"""

from __future__ import annotations

import re

#: Entity names must look like this: they are embedded in tokens and in SQL text.
ENTITY_NAME = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")

#: The entities dbgate knows out of the box (a catalog may introduce others).
KNOWN_ENTITIES = (
    "email",
    "phone",
    "ssn",
    "national_id",
    "card",
    "iban",
    "bank_account",
    "address",
    "postal_code",
    "birth_date",
    "name",
    "ip",
    "passport",
    "tax_id",
    "geo",
    "pii",  # personal data of no more specific kind
)

#: Entity of output derived from several entities, or from a column of unknown kind.
MIXED = "pii"
#: Entity used to tag values tokenized because their provenance could not be decided.
UNKNOWN = "unknown"
#: What a catalog writes to switch a column off.
NONE = "none"

#: Column-name globs -> entity, in priority order (the first match wins).
DEFAULT_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    # more specific forms first: "email_address" is an e-mail, "ip_address" an IP
    ("email", "email"),
    ("e_mail", "email"),
    ("email_*", "email"),
    ("*_email", "email"),
    ("*_email_*", "email"),
    ("emails", "email"),  # plural and list forms: an array or a joined text of them
    ("*_emails", "email"),
    ("emailaddr*", "email"),  # emailAddress unquoted: folded to lower case
    ("*email", "email"),  # useremail, contactemail
    ("ip", "ip"),
    ("ip_addr*", "ip"),
    ("*_ip", "ip"),
    ("*_ip_addr*", "ip"),
    ("ipaddr*", "ip"),
    ("client_addr", "ip"),
    ("remote_addr*", "ip"),
    ("phone", "phone"),
    ("phone_*", "phone"),
    ("*_phone", "phone"),
    ("*_phone_*", "phone"),
    ("phones", "phone"),
    ("*_phones", "phone"),
    ("phonenumber*", "phone"),
    ("tel", "phone"),
    ("telephone*", "phone"),
    ("mobile", "phone"),
    ("mobile_*", "phone"),
    ("cell_phone*", "phone"),
    ("fax", "phone"),
    ("*phone", "phone"),  # homephone, mobilephone
    ("phoneno", "phone"),
    ("mobilenumber", "phone"),
    ("mobileno", "phone"),
    ("cellnumber", "phone"),
    ("ssn", "ssn"),
    ("*_ssn", "ssn"),
    ("ssn_*", "ssn"),  # ssn_last4: part of one
    ("social_security*", "ssn"),
    ("socialsecurity*", "ssn"),
    ("national_id*", "national_id"),
    ("*_national_id*", "national_id"),
    ("nationalid*", "national_id"),
    ("nino", "national_id"),
    ("passport*", "passport"),
    ("driver*_licen?e*", "national_id"),
    ("tax_id*", "tax_id"),
    ("*_tax_id", "tax_id"),
    ("taxid", "tax_id"),
    ("card_number", "card"),
    ("card_num*", "card"),
    ("*_card_number", "card"),
    ("credit_card*", "card"),
    ("creditcard*", "card"),
    ("cardnumber", "card"),
    ("ccnumber", "card"),
    ("cc_number", "card"),
    ("card_no", "card"),
    ("cvv", "card"),
    ("cvc", "card"),
    ("pan", "card"),
    ("card_pan", "card"),
    ("iban", "iban"),
    ("*_iban", "iban"),
    ("bank_account*", "bank_account"),
    ("account_number", "bank_account"),
    ("routing_number", "bank_account"),
    ("bankaccount*", "bank_account"),
    ("accountnumber", "bank_account"),
    ("address", "address"),
    ("address_*", "address"),
    ("*_address", "address"),
    ("address[0-9]", "address"),  # address1, address2
    ("street*", "address"),
    ("*_street", "address"),
    ("*address", "address"),  # homeaddress, streetaddress
    ("address[0-9]*", "address"),
    ("postal_code", "postal_code"),
    ("postcode", "postal_code"),
    ("zip", "postal_code"),
    ("zip_code", "postal_code"),
    ("zipcode", "postal_code"),
    ("postalcode", "postal_code"),
    ("birth_date", "birth_date"),
    ("birthdate", "birth_date"),
    ("birthday", "birth_date"),
    ("date_of_birth", "birth_date"),
    ("dateofbirth", "birth_date"),
    ("dob", "birth_date"),
    ("full_name", "name"),
    ("first_name", "name"),
    ("last_name", "name"),
    ("middle_name", "name"),
    ("maiden_name", "name"),
    ("surname", "name"),
    ("given_name", "name"),
    ("family_name", "name"),
    ("firstname", "name"),
    ("lastname", "name"),
    ("fullname", "name"),
    ("fname", "name"),
    ("lname", "name"),
    ("middlename", "name"),
    ("givenname", "name"),
    ("familyname", "name"),
    ("customername", "name"),
    ("contactname", "name"),
    ("customer_name", "name"),
    ("contact_name", "name"),
    ("latitude", "geo"),
    ("longitude", "geo"),
    ("geolocation", "geo"),
)
