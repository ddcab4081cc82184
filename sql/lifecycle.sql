-- Lifecycle of a segment row. Apps may INSERT, UPDATE and DELETE
-- segments.segment directly; these triggers make both paths obey the same
-- rules as the functions.

CREATE FUNCTION segments._segment_before_write() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    definition_entity text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.owner := coalesce(NEW.owner, quote_ident(current_user)::regrole);
        NEW.created_at := now();
        -- A new segment has not been refreshed, whatever the INSERT says.
        NEW.status := 'not_refreshed';
        NEW.member_count := NULL;
        NEW.last_refreshed_at := NULL;
        NEW.last_error := NULL;
    END IF;

    IF TG_OP = 'INSERT' OR NEW.definition IS DISTINCT FROM OLD.definition THEN
        -- Refuses a bad definition (22023, 42703, 42P01) naming its JSON path.
        definition_entity := segments._check_definition(NEW.definition, NEW.id);
        IF NEW.entity IS NOT NULL AND NEW.entity IS DISTINCT FROM definition_entity THEN
            RAISE EXCEPTION 'segment "%": column entity is "%" but the definition is of entity "%"',
                NEW.name, NEW.entity, definition_entity
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        NEW.entity := definition_entity;
        -- Counts describe the old rules until the next refresh.
        NEW.rule_counts := NULL;
    END IF;

    -- updated_at tracks what people change, not what refreshes write.
    IF TG_OP = 'INSERT'
       OR (NEW.name, NEW.description, NEW.definition, NEW.type, NEW.state, NEW.schedule,
           NEW.tags, NEW.never_expire, NEW.priority, NEW.move_existing)
          IS DISTINCT FROM
          (OLD.name, OLD.description, OLD.definition, OLD.type, OLD.state, OLD.schedule,
           OLD.tags, OLD.never_expire, OLD.priority, OLD.move_existing) THEN
        NEW.updated_at := now();
        NEW.updated_by := quote_ident(current_user)::regrole;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER segment_before_write
    BEFORE INSERT OR UPDATE ON segments.segment
    FOR EACH ROW EXECUTE FUNCTION segments._segment_before_write();
