"""DataService's post-session reports: GetSessionReport, ListSessionReports,
RenderSessionReport and RebuildSessionReport. Merged into the DataService servicer through
`report_methods(domain)`."""

from __future__ import annotations

from classwire.api.data.v1 import service_pb2 as api

from ..convert import reports as conv
from ..domain.reports import ReportsDomain, check_render, learner_not_in_session
from ..domain.reports_render import render
from ..rpc.context import principal
from .unimplemented import delegates


class ReportsHandler:
    IMPLEMENTED = (
        "GetSessionReport",
        "ListSessionReports",
        "RenderSessionReport",
        "RebuildSessionReport",
    )

    def __init__(self, domain: ReportsDomain) -> None:
        self.domain = domain

    async def GetSessionReport(self, request, context):
        report = await self.domain.get(principal(), request.session_id)
        return api.GetSessionReportResponse(report=report)

    async def ListSessionReports(self, request, context):
        reports, token = await self.domain.list(
            principal(), conv.list_filter(request), request.page_size, request.page_token
        )
        return api.ListSessionReportsResponse(reports=reports, next_page_token=token)

    async def RenderSessionReport(self, request, context):
        caller = principal()
        caller.require("data:read")
        check_render(request.format, request.time_zone, request.locale)
        report = await self.domain.ready(caller, request.session_id)
        learner = request.learner_identity
        if learner and all(a.identity != learner for a in report.attendance):
            raise learner_not_in_session(learner)
        media_type, title, text = render(
            report,
            request.format,
            learner=learner,
            time_zone=request.time_zone,
            locale=request.locale,
        )
        return api.RenderSessionReportResponse(
            media_type=media_type, title=title, text=text, revision=report.revision
        )

    async def RebuildSessionReport(self, request, context):
        report = await self.domain.rebuild(principal(), request.session_id)
        return api.RebuildSessionReportResponse(report=report)


def report_methods(domain: ReportsDomain) -> dict:
    """The report RPCs by name, for data_servicer(..., extra=...)."""
    return delegates(ReportsHandler(domain), ReportsHandler.IMPLEMENTED)
