-- Deterministic sample data for the demo, the tests and the benchmarks.
--
--   psql -v scale=100000 -v anchor=2026-11-01 -f scripts/sample_data.sql
--
-- scale   customers to create (default 100000); orders and email events are
--         5 x scale each, spread over the year before anchor.
-- sessions  shopping sessions per customer (default 1): each is a product
--         view, then in 40% of them an add to cart of that product within
--         12 hours, and in half of those a purchase of it within 3 days
--         (product_events: about 1.6 x sessions x scale rows).
-- anchor  the day the data is "as of" (default: today). The same scale and
--         anchor always produce exactly the same rows: every value comes
--         from a hash of the row number, never from random().
-- schema  where the tables go (default public).
\set ON_ERROR_STOP on
\if :{?scale} \else \set scale 100000 \endif
\if :{?anchor} \else \set anchor `date +%F` \endif
\if :{?schema} \else \set schema public \endif
\if :{?sessions} \else \set sessions 1 \endif

SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS :"schema";
SET search_path = :"schema", pg_catalog;

-- u(i, salt): a uniform value in [0, 1) that depends only on (i, salt).
CREATE FUNCTION pg_temp.u(i bigint, salt bigint) RETURNS float8
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS $$ SELECT (hashint8extended(i, salt) & 2147483647)::float8 / 2147483648.0 $$;
-- pick(i, salt, choices): one element of choices, uniformly.
CREATE FUNCTION pg_temp.pick(i bigint, salt bigint, choices text[]) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS $$ SELECT choices[1 + floor(pg_temp.u(i, salt) * cardinality(choices))::int] $$;

DROP TABLE IF EXISTS product_events, email_events, orders, customers;

CREATE TABLE customers (
  id             bigint PRIMARY KEY,
  code           text NOT NULL UNIQUE,
  email          text,
  first_name     text,
  last_name      text,
  country        text,
  city           text,
  age            integer,
  birth_date     date,
  gender         text,
  loyalty_tier   text,
  lifetime_value numeric(12,2),
  unsubscribed   boolean NOT NULL,
  signed_up_at   timestamptz NOT NULL,
  last_login_at  timestamptz
);

INSERT INTO customers
SELECT i,
       'C' || lpad(i::text, 8, '0'),
       'customer' || i || '@example.' || pg_temp.pick(i, 1, '{com,de,fr,org,net}'),
       pg_temp.pick(i, 2, '{Anna,Ben,Chloe,David,Emma,Felix,Greta,Hugo,Ines,Jonas,Klara,Lukas,Mia,Noah,Olivia,Paul,Quentin,Rosa,Sven,Theo}'),
       pg_temp.pick(i, 3, '{Müller,Schmidt,Martin,Bernard,Smith,Jones,García,Rossi,Jansen,Nowak,Andersson,Silva,Dubois,Weber,Taylor}'),
       CASE WHEN pg_temp.u(i, 4) < 0.02 THEN NULL
            ELSE pg_temp.pick(i, 5, '{DE,DE,DE,FR,FR,US,US,US,GB,GB,ES,IT,NL,SE,PL,BR}') END,
       pg_temp.pick(i, 6, '{Berlin,Paris,London,Madrid,Rome,Amsterdam,Stockholm,Warsaw,Boston,Munich,Lyon,Hamburg}'),
       a.age,
       CASE WHEN a.age IS NULL THEN NULL
            ELSE (date :'anchor' - make_interval(years => a.age, days => floor(pg_temp.u(i, 8) * 365)::int))::date END,
       pg_temp.pick(i, 9, '{female,male,female,male,diverse}'),
       pg_temp.pick(i, 10, '{bronze,bronze,bronze,silver,silver,gold,platinum}'),
       round((pg_temp.u(i, 11) ^ 3 * 20000)::numeric, 2),
       pg_temp.u(i, 12) < 0.15,
       timestamptz :'anchor' - make_interval(secs => pg_temp.u(i, 13) * 3 * 365 * 86400),
       CASE WHEN pg_temp.u(i, 14) < 0.1 THEN NULL
            ELSE timestamptz :'anchor' - make_interval(secs => pg_temp.u(i, 15) * 120 * 86400) END
FROM generate_series(1, :scale::bigint) AS i,
     LATERAL (SELECT CASE WHEN pg_temp.u(i, 7) < 0.03 THEN NULL
                          ELSE 18 + floor(pg_temp.u(i, 16) * 68)::int END AS age) AS a;

CREATE TABLE orders (
  id          bigint PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES customers (id),
  ordered_at  timestamptz NOT NULL,
  amount      numeric(10,2) NOT NULL,
  status      text NOT NULL,
  channel     text NOT NULL
);

-- Customer ids are skewed (u^2) so some customers order a lot and many never do.
INSERT INTO orders
SELECT i,
       1 + floor(pg_temp.u(i, 21) ^ 2 * :scale::bigint)::bigint,
       timestamptz :'anchor' - make_interval(secs => pg_temp.u(i, 22) * 365 * 86400),
       round((5 + pg_temp.u(i, 23) ^ 2 * 495)::numeric, 2),
       pg_temp.pick(i, 24, '{paid,paid,paid,paid,paid,paid,refunded,cancelled}'),
       pg_temp.pick(i, 25, '{web,web,store,app}')
FROM generate_series(1, 5 * :scale::bigint) AS i;

CREATE TABLE email_events (
  id          bigint PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES customers (id),
  event_type  text NOT NULL,
  campaign    text NOT NULL,
  occurred_at timestamptz NOT NULL
);

INSERT INTO email_events
SELECT i,
       1 + floor(pg_temp.u(i, 31) * :scale::bigint)::bigint,
       pg_temp.pick(i, 32, '{sent,sent,sent,sent,open,open,open,click,click,bounce}'),
       pg_temp.pick(i, 33, '{spring-sale,summer-sale,black-friday,newsletter,welcome}'),
       timestamptz :'anchor' - make_interval(secs => pg_temp.u(i, 34) * 365 * 86400)
FROM generate_series(1, 5 * :scale::bigint) AS i;

-- No foreign key, as event tables often have none (and the tests that
-- delete or truncate customers need not know of it).
CREATE TABLE product_events (
  id          bigint PRIMARY KEY,
  customer_id bigint NOT NULL,
  event_type  text NOT NULL,
  product_id  integer NOT NULL,
  occurred_at timestamptz NOT NULL
);

-- Session s of a customer (ids skewed like orders): viewed at v, then
-- perhaps added_to_cart at v + up to 12 hours, then perhaps purchased up
-- to 3 days after the cart; the same product throughout.
INSERT INTO product_events
SELECT s * 3 + step,
       1 + floor(pg_temp.u(s, 41) ^ 2 * :scale::bigint)::bigint,
       (ARRAY['viewed', 'added_to_cart', 'purchased'])[step + 1],
       1 + floor(pg_temp.u(s, 42) * 200)::int,
       timestamptz :'anchor' - make_interval(secs => (4 + pg_temp.u(s, 43) * 361) * 86400)
         + make_interval(secs => CASE WHEN step >= 1 THEN 60 + pg_temp.u(s, 44) * 12 * 3600 ELSE 0 END
                                + CASE WHEN step = 2 THEN 60 + pg_temp.u(s, 45) * 3 * 86400 ELSE 0 END)
FROM generate_series(1, :sessions::bigint * :scale::bigint) AS s,
     generate_series(0, 2) AS step
WHERE step = 0 OR (step = 1 AND pg_temp.u(s, 46) < 0.4) OR (step = 2 AND pg_temp.u(s, 46) < 0.2);

CREATE INDEX ON orders (customer_id);
CREATE INDEX ON email_events (customer_id);
-- What sequences over product events read: a record's events in time order.
CREATE INDEX ON product_events (customer_id, occurred_at);
ANALYZE customers, orders, email_events, product_events;
