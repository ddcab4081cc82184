//! The grants of the views segments makes for users (members views, traits
//! views): read before a view is dropped to be made again, and put back on
//! the new view, so that a `GRANT SELECT` a DBA gave survives the user's DDL
//! and the creation or deletion of a trait.

use pgrx::prelude::*;
use pgrx::spi::Spi;

use crate::pg::spi::{required, spi};

/// A grant of a view: grantee (InvalidOid: PUBLIC), privilege, grantable.
pub type Grant = (pg_sys::Oid, String, bool);

/// The grants on `view` (a qualified name) to anyone but its owner.
pub fn grants_of(view: &str) -> Vec<Grant> {
    Spi::connect(|client| {
        spi(client.select(
            "SELECT a.grantee, a.privilege_type, a.is_grantable \
               FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a \
              WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1) \
                AND a.grantee OPERATOR(pg_catalog.<>) c.relowner",
            None,
            &[view.into()],
        ))
        .map(|row| (required(&row, 1), required(&row, 2), required(&row, 3)))
        .collect()
    })
}

/// Grants `grants` on `view`, or, when None (a new view), SELECT to the
/// extension's roles.
pub fn grant(view: &str, grants: Option<Vec<Grant>>) {
    let Some(grants) = grants else {
        spi(Spi::run(&format!(
            "GRANT SELECT ON {view} TO segments_reader, segments_editor, segments_admin"
        )));
        return;
    };
    for (grantee, privilege, grantable) in grants {
        let to = if grantee == pg_sys::InvalidOid {
            "PUBLIC".to_string()
        } else {
            crate::pg::spi::optional_value::<String>(
                "SELECT $1::pg_catalog.regrole::pg_catalog.text",
                &[grantee.into()],
            )
            .unwrap_or_else(|| "PUBLIC".into())
        };
        let option = if grantable { " WITH GRANT OPTION" } else { "" };
        spi(Spi::run(&format!(
            "GRANT {privilege} ON {view} TO {to}{option}"
        )));
    }
}
