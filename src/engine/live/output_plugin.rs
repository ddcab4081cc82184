//! The output plugin of WAL capture's slots: `pgoutput`, unchanged, except
//! that changes carrying the extension's own origin (`own_writes`) are
//! skipped before they are decoded.
//!
//! A slot names its plugin by library: a slot made with the plugin
//! `segments` loads this library and calls `_PG_output_plugin_init`, which
//! takes pgoutput's callbacks (so the messages, and their parser in
//! `segments_core::pgoutput`, are PostgreSQL's own on every major) and
//! replaces only the origin filter. PostgreSQL asks that filter before it
//! queues a change in the reorder buffer: a skipped change costs reading
//! its WAL record, nothing more.

use pgrx::pg_sys;

/// The plugin name slots are made with (this library's name).
pub const PLUGIN: &str = "segments";

/// Called by PostgreSQL when it loads this library as a slot's output
/// plugin.
///
/// # Safety
/// Called by PostgreSQL's logical decoding with a callbacks struct to fill.
#[no_mangle]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn _PG_output_plugin_init(
    callbacks: *mut pg_sys::OutputPluginCallbacks,
) {
    // SAFETY: pgoutput is part of every PostgreSQL installation; its
    // initializer has this signature on every supported major (it fills
    // the same struct), and an error loading it is raised by PostgreSQL.
    unsafe {
        let init = pg_sys::load_external_function(
            c"pgoutput".as_ptr(),
            c"_PG_output_plugin_init".as_ptr(),
            true,
            std::ptr::null_mut(),
        );
        let init: unsafe extern "C-unwind" fn(*mut pg_sys::OutputPluginCallbacks) =
            std::mem::transmute(init);
        init(callbacks);
        (*callbacks).filter_by_origin_cb = Some(skip_own_writes);
    }
}

/// Skips the extension's own writes; every other origin (a subscription's
/// apply worker writing to a captured table, say) is decoded.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn skip_own_writes(
    _context: *mut pg_sys::LogicalDecodingContext,
    origin: pg_sys::RepOriginId,
) -> bool {
    origin == pg_sys::DoNotReplicateId as pg_sys::RepOriginId
}

/// The setting that lists the libraries slots may name as their plugin
/// (PostgreSQL's minor releases of 2026 on; absent before).
const ALLOWED_PLUGINS: &std::ffi::CStr = c"output_plugin_libraries";

/// Runs `f` (making the slot, or decoding from it) with this library
/// allowed as an output plugin for as long as `f` runs, in this
/// transaction only, where the server lists the libraries a slot may name
/// (`output_plugin_libraries`) and does not list it. The list guards
/// replication connections naming a library of their choice; here the
/// extension names its own library, which the server already loaded, for
/// its own slot. Replication connections still see the DBA's list.
pub fn allowed<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: reads a setting by name (NULL when this server has none).
    let list = unsafe { pg_sys::GetConfigOption(ALLOWED_PLUGINS.as_ptr(), true, false) };
    if list.is_null() {
        return f();
    }
    // SAFETY: a NUL-terminated string owned by the GUC machinery; copied.
    let list = unsafe { std::ffi::CStr::from_ptr(list) }
        .to_string_lossy()
        .into_owned();
    if list
        .split(',')
        .any(|name| name.trim().trim_matches('"') == PLUGIN)
    {
        return f();
    }
    let widened = if list.trim().is_empty() {
        PLUGIN.to_string()
    } else {
        format!("{list}, {PLUGIN}")
    };
    let widened = std::ffi::CString::new(widened).expect("a setting's value has no NUL");
    crate::pg::sandbox::with_setting(ALLOWED_PLUGINS, &widened, pg_sys::GucContext::PGC_SUSET, f)
}
