//! Quoting for the SQL the compiler writes. Identifiers come only from the
//! catalog and values only from definitions; both pass through here, so the
//! compiled SQL is safe by construction whatever a definition contains.

/// Quotes an identifier the way PostgreSQL's `quote_ident` does, except that
/// it always quotes: `"name"`, with embedded quotes doubled.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal the way PostgreSQL's `quote_literal` does:
/// quotes are doubled, and a value with backslashes becomes an `E''` string
/// with its backslashes doubled, so the result means the same under any
/// setting of `standard_conforming_strings`.
pub fn literal(value: &str) -> String {
    let body = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// A built-in operator named by schema, `OPERATOR(pg_catalog.=)`: the SQL
/// the extension generates never finds an operator through search_path.
pub fn op(symbol: &str) -> String {
    format!("OPERATOR(pg_catalog.{symbol})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted_and_escaped() {
        assert_eq!(ident("country"), "\"country\"");
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(ident("a; DROP TABLE x; --"), "\"a; DROP TABLE x; --\"");
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(literal("DE"), "'DE'");
        assert_eq!(literal("O'Brien"), "'O''Brien'");
        assert_eq!(
            literal("'); DROP TABLE customers; --"),
            "'''); DROP TABLE customers; --'"
        );
        assert_eq!(literal("a\\'b"), "E'a\\\\''b'");
        assert_eq!(literal("ünï €"), "'ünï €'");
    }
}
