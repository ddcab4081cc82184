//! The naming rule of entities and related tables, in one place: the
//! registration functions check it, and `sql/schema.sql`'s CHECK
//! constraints are its `sql_pattern` (a test below holds them equal).

use crate::error::SegmentsError;

/// Names of one kind of object: lowercase letters, digits and
/// underscores, starting with a letter or an underscore, at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct NameRule {
    /// What is named, for messages ("entity").
    pub what: &'static str,
    /// The longest name, in characters.
    pub max: usize,
}

/// Entity names: 40 characters leave room for `_members` and `_keys`
/// within PostgreSQL's 63-byte identifiers.
pub const ENTITY: NameRule = NameRule {
    what: "entity",
    max: 40,
};

/// Related table names: any PostgreSQL identifier of the rule.
pub const RELATED: NameRule = NameRule {
    what: "related table",
    max: 63,
};

impl NameRule {
    /// Whether `name` follows the rule.
    pub fn allows(&self, name: &str) -> bool {
        !name.is_empty()
            && name.len() <= self.max
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }

    /// `allows`, or 22023 naming the name and the rule.
    pub fn check(&self, name: &str) -> Result<(), SegmentsError> {
        if self.allows(name) {
            return Ok(());
        }
        Err(SegmentsError::InvalidParameter(format!(
            "{} name \"{name}\" must be 1 to {} lowercase letters, digits or underscores, \
             starting with a letter or an underscore",
            self.what, self.max
        )))
    }

    /// The rule as a POSIX regular expression, for CHECK constraints.
    pub fn sql_pattern(&self) -> String {
        format!("^[a-z_][a-z0-9_]{{0,{}}}$", self.max - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_counts_characters_and_refuses_the_rest() {
        assert!(ENTITY.allows("customer"));
        assert!(ENTITY.allows("_x1"));
        assert!(ENTITY.allows(&"a".repeat(40)));
        assert!(!ENTITY.allows(&"a".repeat(41)));
        assert!(!ENTITY.allows(""));
        assert!(!ENTITY.allows("1abc"));
        assert!(!ENTITY.allows("Customer"));
        assert!(!ENTITY.allows("cust-omer"));
        assert!(RELATED.allows(&"r".repeat(63)));
        assert!(!RELATED.allows(&"r".repeat(64)));
        let message = ENTITY.check("Bad").unwrap_err().to_string();
        assert!(
            message.contains("\"Bad\"") && message.contains("1 to 40"),
            "{message}"
        );
    }

    /// The schema's CHECK constraints are the rule, so a direct write can
    /// never hold a name the functions refuse, or the other way round.
    #[test]
    fn the_schema_checks_the_same_rule() {
        let schema = include_str!("../../sql/schema.sql");
        for (table, rule) in [("entity", ENTITY), ("related", RELATED)] {
            let start = schema
                .find(&format!("CREATE TABLE segments.{table} ("))
                .unwrap_or_else(|| panic!("segments.{table} is in sql/schema.sql"));
            let body = &schema[start..start + schema[start..].find(");").unwrap()];
            let check = format!("CHECK (name ~ '{}')", rule.sql_pattern());
            assert!(
                body.contains(&check),
                "segments.{table} should have {check}"
            );
        }
    }
}
