"""Rosters: people, guardianship, organisations, courses, classes, enrollments, imports.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from classwire.server.store.types import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "roster_imports",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("mode", sa.Integer(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("file_sizes", sa.JSON(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("created_by_api_key_id", sa.String(length=64), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("complete_time", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_roster_imports_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_roster_imports")),
    )
    op.create_index(
        "ix_roster_imports_list", "roster_imports", ["tenant_id", "create_time", "id"], unique=False
    )
    op.create_table(
        "roster_orgs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("type", sa.Integer(), nullable=False),
        sa.Column("identifier", sa.String(length=200), nullable=False),
        sa.Column("parent_id", sa.String(length=64), nullable=True),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("import_id", sa.String(length=64), nullable=True),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("update_time", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["roster_orgs.id"], name=op.f("fk_roster_orgs_parent_id_roster_orgs")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_roster_orgs_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_roster_orgs")),
        sa.UniqueConstraint("tenant_id", "external_id", name="uq_roster_orgs_tenant_external_id"),
    )
    op.create_index(
        "ix_roster_orgs_list", "roster_orgs", ["tenant_id", "state", "id"], unique=False
    )
    op.create_table(
        "roster_people",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("role_bits", sa.Integer(), nullable=False),
        sa.Column("given_name", sa.String(length=200), nullable=False),
        sa.Column("family_name", sa.String(length=200), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("locale", sa.String(length=35), nullable=False),
        sa.Column("contact_channels", sa.JSON(), nullable=False),
        sa.Column("notification_settings", sa.JSON(), nullable=False),
        sa.Column("consents", sa.JSON(), nullable=False),
        sa.Column("instructor_profile", sa.JSON(), nullable=True),
        sa.Column("learner_profile", sa.JSON(), nullable=True),
        sa.Column("org_ids", sa.JSON(), nullable=False),
        sa.Column("grades", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("import_id", sa.String(length=64), nullable=True),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("update_time", UTCDateTime(), nullable=False),
        sa.Column("delete_time", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_roster_people_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_roster_people")),
        sa.UniqueConstraint("tenant_id", "external_id", name="uq_roster_people_tenant_external_id"),
    )
    op.create_index(
        "ix_roster_people_list", "roster_people", ["tenant_id", "state", "id"], unique=False
    )
    op.create_table(
        "roster_academic_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("type", sa.Integer(), nullable=False),
        sa.Column("start_date", sa.Date(), nullable=False),
        sa.Column("end_date", sa.Date(), nullable=False),
        sa.Column("parent_id", sa.String(length=64), nullable=True),
        sa.Column("org_id", sa.String(length=64), nullable=True),
        sa.Column("school_year", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("import_id", sa.String(length=64), nullable=True),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("update_time", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["roster_orgs.id"],
            name=op.f("fk_roster_academic_sessions_org_id_roster_orgs"),
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["roster_academic_sessions.id"],
            name=op.f("fk_roster_academic_sessions_parent_id_roster_academic_sessions"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_roster_academic_sessions_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_roster_academic_sessions")),
        sa.UniqueConstraint(
            "tenant_id", "external_id", name="uq_roster_academic_sessions_tenant_external_id"
        ),
    )
    op.create_index(
        "ix_roster_academic_sessions_list",
        "roster_academic_sessions",
        ["tenant_id", "start_date", "id"],
        unique=False,
    )
    op.create_table(
        "roster_guardian_links",
        sa.Column("learner_id", sa.String(length=64), nullable=False),
        sa.Column("guardian_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("relationship", sa.Integer(), nullable=False),
        sa.Column("receives_notices", sa.Boolean(), nullable=False),
        sa.Column("may_consent", sa.Boolean(), nullable=False),
        sa.Column("import_id", sa.String(length=64), nullable=True),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["guardian_id"],
            ["roster_people.id"],
            name=op.f("fk_roster_guardian_links_guardian_id_roster_people"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["learner_id"],
            ["roster_people.id"],
            name=op.f("fk_roster_guardian_links_learner_id_roster_people"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_roster_guardian_links_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("learner_id", "guardian_id", name=op.f("pk_roster_guardian_links")),
    )
    op.create_index(
        "ix_roster_guardian_links_guardian",
        "roster_guardian_links",
        ["tenant_id", "guardian_id", "learner_id"],
        unique=False,
    )
    op.create_table(
        "roster_person_orgs",
        sa.Column("person_id", sa.String(length=64), nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["roster_orgs.id"],
            name=op.f("fk_roster_person_orgs_org_id_roster_orgs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["roster_people.id"],
            name=op.f("fk_roster_person_orgs_person_id_roster_people"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_roster_person_orgs_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("person_id", "org_id", name=op.f("pk_roster_person_orgs")),
    )
    op.create_index(
        "ix_roster_person_orgs_org",
        "roster_person_orgs",
        ["tenant_id", "org_id", "person_id"],
        unique=False,
    )
    op.create_table(
        "roster_qualifications",
        sa.Column("person_id", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=100), nullable=False),
        sa.Column("level", sa.String(length=100), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["roster_people.id"],
            name=op.f("fk_roster_qualifications_person_id_roster_people"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_roster_qualifications_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "person_id", "subject", "level", name=op.f("pk_roster_qualifications")
        ),
    )
    op.create_index(
        "ix_roster_qualifications_subject",
        "roster_qualifications",
        ["tenant_id", "subject", "level", "person_id"],
        unique=False,
    )
    op.create_table(
        "roster_courses",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("course_code", sa.String(length=100), nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("school_year_session_id", sa.String(length=64), nullable=True),
        sa.Column("subjects", sa.JSON(), nullable=False),
        sa.Column("grades", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("import_id", sa.String(length=64), nullable=True),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("update_time", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["roster_orgs.id"], name=op.f("fk_roster_courses_org_id_roster_orgs")
        ),
        sa.ForeignKeyConstraint(
            ["school_year_session_id"],
            ["roster_academic_sessions.id"],
            name=op.f("fk_roster_courses_school_year_session_id_roster_academic_sessions"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_roster_courses_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_roster_courses")),
        sa.UniqueConstraint(
            "tenant_id", "external_id", name="uq_roster_courses_tenant_external_id"
        ),
    )
    op.create_index(
        "ix_roster_courses_list", "roster_courses", ["tenant_id", "state", "id"], unique=False
    )
    op.create_table(
        "roster_classes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("course_id", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("class_code", sa.String(length=100), nullable=False),
        sa.Column("subject", sa.String(length=100), nullable=False),
        sa.Column("level", sa.String(length=100), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("academic_session_ids", sa.JSON(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("import_id", sa.String(length=64), nullable=True),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("update_time", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["course_id"],
            ["roster_courses.id"],
            name=op.f("fk_roster_classes_course_id_roster_courses"),
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["roster_orgs.id"], name=op.f("fk_roster_classes_org_id_roster_orgs")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_roster_classes_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_roster_classes")),
        sa.UniqueConstraint(
            "tenant_id", "external_id", name="uq_roster_classes_tenant_external_id"
        ),
    )
    op.create_index(
        "ix_roster_classes_list", "roster_classes", ["tenant_id", "state", "id"], unique=False
    )
    op.create_table(
        "roster_class_sessions",
        sa.Column("class_id", sa.String(length=64), nullable=False),
        sa.Column("academic_session_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["academic_session_id"],
            ["roster_academic_sessions.id"],
            name=op.f("fk_roster_class_sessions_academic_session_id_roster_academic_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["class_id"],
            ["roster_classes.id"],
            name=op.f("fk_roster_class_sessions_class_id_roster_classes"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_roster_class_sessions_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "class_id", "academic_session_id", name=op.f("pk_roster_class_sessions")
        ),
    )
    op.create_index(
        "ix_roster_class_sessions_session",
        "roster_class_sessions",
        ["tenant_id", "academic_session_id", "class_id"],
        unique=False,
    )
    op.create_table(
        "roster_enrollments",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("person_id", sa.String(length=64), nullable=False),
        sa.Column("class_id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.Integer(), nullable=False),
        sa.Column("primary", sa.Boolean(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("begin_time", UTCDateTime(), nullable=False),
        sa.Column("end_time", UTCDateTime(), nullable=True),
        sa.Column("end_reason", sa.Text(), nullable=False),
        sa.Column("import_id", sa.String(length=64), nullable=True),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["class_id"],
            ["roster_classes.id"],
            name=op.f("fk_roster_enrollments_class_id_roster_classes"),
        ),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["roster_people.id"],
            name=op.f("fk_roster_enrollments_person_id_roster_people"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_roster_enrollments_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_roster_enrollments")),
        sa.UniqueConstraint(
            "tenant_id", "external_id", name="uq_roster_enrollments_tenant_external_id"
        ),
    )
    op.create_index(
        "ix_roster_enrollments_class",
        "roster_enrollments",
        ["tenant_id", "class_id", "state", "role"],
        unique=False,
    )
    op.create_index(
        "ix_roster_enrollments_list",
        "roster_enrollments",
        ["tenant_id", "state", "id"],
        unique=False,
    )
    op.create_index(
        "ix_roster_enrollments_person",
        "roster_enrollments",
        ["tenant_id", "person_id", "state"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_roster_enrollments_person", table_name="roster_enrollments")
    op.drop_index("ix_roster_enrollments_list", table_name="roster_enrollments")
    op.drop_index("ix_roster_enrollments_class", table_name="roster_enrollments")
    op.drop_table("roster_enrollments")
    op.drop_index("ix_roster_class_sessions_session", table_name="roster_class_sessions")
    op.drop_table("roster_class_sessions")
    op.drop_index("ix_roster_classes_list", table_name="roster_classes")
    op.drop_table("roster_classes")
    op.drop_index("ix_roster_courses_list", table_name="roster_courses")
    op.drop_table("roster_courses")
    op.drop_index("ix_roster_qualifications_subject", table_name="roster_qualifications")
    op.drop_table("roster_qualifications")
    op.drop_index("ix_roster_person_orgs_org", table_name="roster_person_orgs")
    op.drop_table("roster_person_orgs")
    op.drop_index("ix_roster_guardian_links_guardian", table_name="roster_guardian_links")
    op.drop_table("roster_guardian_links")
    op.drop_index("ix_roster_academic_sessions_list", table_name="roster_academic_sessions")
    op.drop_table("roster_academic_sessions")
    op.drop_index("ix_roster_people_list", table_name="roster_people")
    op.drop_table("roster_people")
    op.drop_index("ix_roster_orgs_list", table_name="roster_orgs")
    op.drop_table("roster_orgs")
    op.drop_index("ix_roster_imports_list", table_name="roster_imports")
    op.drop_table("roster_imports")
