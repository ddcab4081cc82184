//! Authorization: who the caller is and which of the extension's roles
//! (`segments_editor`, `segments_sequence_manager`, `segments_admin`) they
//! have. Every SQL function that changes something checks here first.

use pgrx::pg_sys;

use crate::pg::error::{Raise, SegmentsError};

/// The role the caller acts as (`current_user`).
pub fn current_role() -> pg_sys::Oid {
    // SAFETY: reads a backend global; always valid inside a transaction.
    unsafe { pg_sys::GetUserId() }
}

/// Whether `role` has the privileges of the named role (superusers do).
pub fn has_role(role: pg_sys::Oid, name: &std::ffi::CStr) -> bool {
    // SAFETY: get_role_oid with missing_ok returns InvalidOid when absent.
    unsafe {
        let target = pg_sys::get_role_oid(name.as_ptr(), true);
        pg_sys::superuser_arg(role)
            || (target != pg_sys::InvalidOid && pg_sys::has_privs_of_role(role, target))
    }
}

/// Refuses (42501) a caller that is not a `segments_editor` (or above).
pub fn require_editor(what: &str) {
    if !has_role(current_role(), c"segments_editor") {
        SegmentsError::InsufficientPrivilege(format!(
            "permission denied to {what}: only members of segments_editor may"
        ))
        .raise();
    }
}

/// Refuses (42501) a caller that is not a `segments_sequence_manager` (or
/// admin, or superuser).
pub fn require_sequence_manager(what: &str) {
    if !has_role(current_role(), c"segments_sequence_manager") {
        SegmentsError::InsufficientPrivilege(format!(
            "permission denied to {what}: only members of segments_sequence_manager or segments_admin may"
        ))
        .raise();
    }
}

/// Refuses (42501) a caller that is not a `segments_admin` (or superuser).
pub fn require_admin(what: &str) {
    if !has_role(current_role(), c"segments_admin") {
        SegmentsError::InsufficientPrivilege(format!(
            "permission denied to {what}: only members of segments_admin may"
        ))
        .raise();
    }
}

/// Refuses (42501) a caller without SELECT on a relation.
pub fn require_select(relation: pg_sys::Oid, what: &str) {
    // SAFETY: an ACL check of an existing relation; a dropped one errors.
    let ok = unsafe {
        pg_sys::pg_class_aclcheck(
            relation,
            current_role(),
            pg_sys::ACL_SELECT as pg_sys::AclMode,
        )
    } == pg_sys::AclResult::ACLCHECK_OK;
    if !ok {
        SegmentsError::InsufficientPrivilege(format!("permission denied for {what}")).raise();
    }
}

thread_local! {
    /// (entity, role, local transaction) -> may read: the key dictionary's
    /// row-level policy asks once per row.
    static READABLE: std::cell::RefCell<Option<(String, pg_sys::Oid, u32, bool)>> = const { std::cell::RefCell::new(None) };
}

/// Whether the current role may SELECT an entity's table (cached per
/// transaction and role).
pub fn may_read_entity(entity: &str) -> bool {
    let role = current_role();
    let transaction = crate::pg::versions::local_transaction_id();
    let cached = READABLE.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(e, r, t, _)| e == entity && *r == role && *t == transaction)
            .map(|(_, _, _, ok)| *ok)
    });
    if let Some(ok) = cached {
        return ok;
    }
    let ok = crate::pg::spi::optional_value::<bool>(
        "SELECT pg_catalog.has_table_privilege(relation::oid, 'SELECT') FROM segments.entity \
          WHERE name OPERATOR(pg_catalog.=) $1",
        &[entity.into()],
    )
    .unwrap_or(false);
    READABLE.with(|c| *c.borrow_mut() = Some((entity.to_string(), role, transaction, ok)));
    ok
}

/// Refuses (42501) a definition that reads a column the current role may
/// not SELECT: it would be evaluated as its owner and could reveal it.
pub fn check_can_read(columns: &[(String, String)]) -> Result<(), crate::pg::error::Reported> {
    for (relation, column) in columns {
        let allowed = crate::pg::spi::optional_value::<bool>(
            "SELECT has_column_privilege($1::regclass, $2, 'SELECT')",
            &[relation.as_str().into(), column.as_str().into()],
        );
        if allowed != Some(true) {
            return Err(SegmentsError::InsufficientPrivilege(format!(
                "permission denied: this definition reads column \"{column}\" of {relation}, which you may not SELECT"
            ))
            .into());
        }
    }
    Ok(())
}
